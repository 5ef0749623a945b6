"""The bundle format: what a bundle folder holds, reading and verifying one (:mod:`.format`), and
its Ed25519 signatures (:mod:`.signing`). Shared by the export step, which writes bundles, and
the runtime, which reads them; imports nothing from either."""
