"""Wire formats for (sparse) tensors and the byte meter: what is actually sent is what is counted."""
from fedlottery.comm.codec import CodecError, decode_tensor, encode_tensor
from fedlottery.comm.meter import ByteMeter, broadcast_bytes, content_bytes, values_bytes
from fedlottery.comm.payload import complete_mask, pack_state, unpack_state

__all__ = [
    "CodecError", "decode_tensor", "encode_tensor", "ByteMeter", "broadcast_bytes", "content_bytes",
    "values_bytes", "complete_mask", "pack_state", "unpack_state",
]
