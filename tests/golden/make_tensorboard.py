"""Golden TensorBoard event file for lib/io/tensorboard.ts (tests/io/tensorboard_test.ts).

Written by TensorBoard's own writer (`tensorboard.summary.writer.event_file_writer.EventFileWriter`: the
file-version event, then TFRecord framing with masked CRC-32C) from `event_pb2.Event` protos with scalar
`Summary.Value.simple_value`s, the events the trainer logs; wall times fixed so the bytes are reproducible.
Then read back with TensorBoard's own reader (`EventAccumulator`) as a check.
  .venv-golden/bin/python tests/golden/make_tensorboard.py   (pip: tensorboard, from the wheel mirror)
"""
import glob
import os
import shutil
import struct
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# (step, wall_time, {tag: value}); the tags the trainer writes.
EVENTS = [
    (1, 1700000001.25, {"train/loss": 2.5, "train/ploss_0": 1.25, "train/acc_0": 0.5, "train/lr": 0.001}),
    (2, 1700000002.5, {"train/loss": 1.875, "train/tokens_per_s": 1234.5, "eval/tau": 1.75}),
    (10, 1700000010.0, {"eval/acc_1": 0.1, "train/loss": -0.0}),
]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tensorboard.tfevents")


def main():
    tmp = tempfile.mkdtemp()
    try:
        w = EventFileWriter(tmp, filename_suffix=".golden")
        # EventFileWriter writes the file-version event with the current time; rewrite it below with a fixed one.
        for step, wall, scalars in EVENTS:
            values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]
            w.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=values)))
        w.close()
        (path,) = glob.glob(os.path.join(tmp, "events.out.tfevents.*"))
        with open(path, "rb") as f:
            data = f.read()
        # Re-write the whole file with TensorBoard's record writer so the version event has a fixed wall time.
        from tensorboard.summary.writer.record_writer import RecordWriter

        first = event_pb2.Event()
        n = int.from_bytes(data[:8], "little")
        first.ParseFromString(data[12 : 12 + n])
        assert first.file_version == "brain.Event:2", first
        first.wall_time = 1700000000.0
        with open(OUT, "wb") as f:
            rw = RecordWriter(f)
            rw.write(first.SerializeToString())
            off = 12 + n + 4
            while off < len(data):
                m = int.from_bytes(data[off : off + 8], "little")
                rw.write(data[off + 12 : off + 12 + m])
                off += 12 + m + 4
            rw.flush()
    finally:
        shutil.rmtree(tmp)
    check(OUT)


def check(path):
    d = tempfile.mkdtemp()
    try:
        shutil.copy(path, os.path.join(d, "events.out.tfevents.0.golden"))
        acc = EventAccumulator(d)
        acc.Reload()
        for step, _, scalars in EVENTS:
            for tag, v in scalars.items():
                got = [e.value for e in acc.Scalars(tag) if e.step == step]
                f32 = struct.unpack("<f", struct.pack("<f", v))[0]
                assert got == [f32], (tag, step, got, v)
        print(f"wrote {path}: {sorted(acc.Tags()['scalars'])}")
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
