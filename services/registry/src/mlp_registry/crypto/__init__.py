"""Envelope encryption (AES-256-GCM in segments), key providers and DSSE/in-toto manifest signing."""
