"""Reading TensorBoard event files back (proves they are readable; used by the loop and fault tests)."""

import os
import struct


def read_tb_scalars(directory):
  """Minimal TFRecord reader for TensorBoard event files (proves they are readable)."""
  from tensorboardX.proto import event_pb2

  tags = {}
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      buf = f.read()
    pos = 0
    while pos < len(buf):
      (length,) = struct.unpack("<Q", buf[pos:pos + 8])
      data = buf[pos + 12: pos + 12 + length]
      pos += 12 + length + 4
      ev = event_pb2.Event.FromString(data)
      for v in ev.summary.value:
        tags.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return tags
