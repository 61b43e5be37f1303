"""The shared key as the official Python SDK takes it, for every Python peer of the interop
tests: hkdf -> the 32 raw key bytes, pbkdf2 -> the key as 64 hex ASCII characters (what
oracle-calls does; DESIGN §4)."""
from livekit import rtc


def e2ee_options(key_hex, kdf_name):
    """`rtc.E2EEOptions` with `key_hex` as the shared key under `kdf_name` ("hkdf"|"pbkdf2")."""
    if kdf_name == "hkdf":
        material, kdf = bytes.fromhex(key_hex), rtc.KeyDerivationFunction.HKDF
    else:
        material, kdf = key_hex.encode(), rtc.KeyDerivationFunction.PBKDF2
    return rtc.E2EEOptions(
        key_provider_options=rtc.KeyProviderOptions(shared_key=material, key_derivation_function=kdf)
    )
