"""The persisted checkpoint format, for the engines that write and read it.

A public seam: the graph engine (`bastion.graph`) and the agent journal encode and decode
checkpoint payloads through these functions only, never through `bastion.checkpoint`'s
private modules. Every payload carries its format version `v`; `upgrade` migrates old ones.
"""

from bastion.checkpoint._format import (
    FORMAT_VERSION,
    MIGRATIONS,
    NO_ARG,
    Decoded,
    Migration,
    decode_chain,
    decode_done,
    decode_history,
    decode_payload,
    encode_checkpoint,
    encode_done,
    encode_interrupt,
    encode_resume,
    encode_value,
    upgrade,
)

__all__ = [
    "FORMAT_VERSION",
    "MIGRATIONS",
    "NO_ARG",
    "Decoded",
    "Migration",
    "decode_chain",
    "decode_done",
    "decode_history",
    "decode_payload",
    "encode_checkpoint",
    "encode_done",
    "encode_interrupt",
    "encode_resume",
    "encode_value",
    "upgrade",
]
