#!/usr/bin/env bash
# Regenerate every vector file in crates/crypto/tests/vectors/ and check it.
# Needs: Python >= 3.11 with cryptography >= 48, Node >= 20 with npm.
# Usage (from anywhere, e.g. the repo root):
#   bash crates/crypto/tests/vectors/gen/regen.sh
# NEW_RSA_KEYS=1 makes fresh RSA keys; otherwise the RSA keys in keys.json are kept
# (RSA key generation cannot be seeded; the EC/X25519 keys are derived from fixed seeds).
set -euo pipefail

GEN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$GEN_DIR"

PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python >= 3.11 required, found {sys.version.split()[0]}")
try:
    import cryptography
    from cryptography.hazmat.primitives import hpke  # noqa: F401
except ImportError as exc:
    sys.exit(f"Python package cryptography >= 48 (with hazmat.primitives.hpke) required: {exc}")
if int(cryptography.__version__.split(".")[0]) < 48:
    sys.exit(f"cryptography >= 48 required, found {cryptography.__version__}")
# v1 HPKE envelopes use aad = header; cryptography's public single-shot API has no aad.
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
if not all(hasattr(rust_openssl.hpke, n) for n in ("_encrypt_with_aad", "_decrypt_with_aad")):
    sys.exit(f"cryptography {cryptography.__version__} lacks hpke._encrypt_with_aad/_decrypt_with_aad (see gen/README.md)")
EOF

node -e 'const m = Number(process.versions.node.split(".")[0]); if (m < 20) { console.error(`Node >= 20 required, found ${process.version}`); process.exit(1); }'

echo "== npm ci (eciesjs pinned by package-lock.json)"
npm ci --no-audit --no-fund

echo "== keys.json + HPKE/RSA envelopes (Python cryptography)"
"$PYTHON" gen_envelopes.py

echo "== ecies-secp256k1 envelopes (eciesjs)"
node gen_ecies.mjs

echo "== signed prekeys + v2 envelopes around envelopes.json's v1 ones (Python cryptography)"
"$PYTHON" gen_prekey_envelopes.py

echo "== LiveKit frames (Python cryptography)"
"$PYTHON" gen_frames.py

echo "== LiveKit frames (Node WebCrypto)"
node gen_frames_webcrypto.mjs

echo "== cross-checks"
"$PYTHON" hpke_ref.py
node check_keys.mjs
"$PYTHON" check_vectors.py

echo "regen.sh: done; vectors are in ${GEN_DIR%/gen}"
