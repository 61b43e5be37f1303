-- Token buckets of the limits that the servers of an oracle share (`limits.cluster_wide`,
-- docs/DEPLOYMENT.md "Limits"): one row per limit, oracle and user (or API key). Used on
-- PostgreSQL only; on SQLite the one server keeps its buckets in memory and this table stays
-- empty. Times are the database's clock in Unix milliseconds, so the servers' clocks never
-- matter. A row whose bucket is full again (`full_at_ms` passed) is the same as no row and
-- is swept.
CREATE TABLE rate_buckets (
    scope      TEXT NOT NULL,
    bucket     TEXT NOT NULL,
    tokens     DOUBLE PRECISION NOT NULL,
    at_ms      DOUBLE PRECISION NOT NULL,
    full_at_ms DOUBLE PRECISION NOT NULL,
    taken      BOOLEAN NOT NULL,
    PRIMARY KEY (scope, bucket)
);
CREATE INDEX rate_buckets_by_full ON rate_buckets (full_at_ms);
