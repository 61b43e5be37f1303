-- Which servers may run on this database (docs/DEPLOYMENT.md "Upgrading"). A server that finds
-- a migration newer than the ones it knows starts only if its own schema version is at least
-- oldest_server_schema. A migration that servers of older versions cannot live with (a dropped
-- or renamed column or table, a new NOT NULL column without a default, a value whose meaning
-- changed) raises it to its own version; an additive one leaves it as it is. Servers of schema
-- 8 and older do not read this table: they refuse every database newer than theirs.
CREATE TABLE schema_compat (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_server_schema BIGINT NOT NULL
);
INSERT INTO schema_compat (id, oldest_server_schema) VALUES (1, 8);
