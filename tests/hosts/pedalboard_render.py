"""Renders through the SongGen VST3 in pedalboard (a JUCE host that disables a plugin's extra
buses) with a finished take restored through the plugin's VST3 state.

Usage: pedalboard_render.py ARGS_JSON, where ARGS_JSON holds
  bundle       path of the .vst3 bundle
  takes        the persisted `takes` field to put into the plugin state (a JSON string)
  frames       frames to render
  sample_rate  host sample rate
  block        host block size
  input        value of every input sample (left and right)
  out          file for the rendered main output: little-endian f32, left then right
Prints one line per fact the Rust test checks: "key=value".
"""

import json
import struct
import sys

import numpy as np
import pedalboard


def split_preset(data):
    """A .vstpreset (what pedalboard's preset_data is) -> (class id, {chunk id: bytes})."""
    if data[:4] != b"VST3":
        raise ValueError("not a VST3 preset")
    class_id = data[8:40]
    (list_offset,) = struct.unpack_from("<q", data, 40)
    if data[list_offset : list_offset + 4] != b"List":
        raise ValueError("no chunk list")
    (count,) = struct.unpack_from("<i", data, list_offset + 4)
    chunks = {}
    pos = list_offset + 8
    for _ in range(count):
        chunk_id = data[pos : pos + 4]
        offset, size = struct.unpack_from("<qq", data, pos + 4)
        chunks[chunk_id] = data[offset : offset + size]
        pos += 20
    return class_id, chunks


def join_preset(class_id, chunks):
    header_len = 48
    body = b""
    entries = b""
    for chunk_id, blob in chunks.items():
        entries += chunk_id + struct.pack("<qq", header_len + len(body), len(blob))
        body += blob
    header = b"VST3" + struct.pack("<i", 1) + class_id
    header += struct.pack("<q", header_len + len(body))
    return header + body + b"List" + struct.pack("<i", len(chunks)) + entries


def component_state(plugin):
    _, chunks = split_preset(plugin.preset_data)
    return json.loads(chunks[b"Comp"])


def main():
    args = json.loads(sys.argv[1])
    plugin = pedalboard.load_plugin(args["bundle"])
    print(f"name={plugin.name}")
    print(f"instrument={plugin.is_instrument}")

    class_id, chunks = split_preset(plugin.preset_data)
    state = json.loads(chunks[b"Comp"])
    state["fields"]["takes"] = args["takes"]
    chunks[b"Comp"] = json.dumps(state).encode()
    plugin.preset_data = join_preset(class_id, chunks)
    restored = component_state(plugin)["fields"]["takes"]
    print(f"state_round_trip={json.loads(restored) == json.loads(args['takes'])}")

    frames = args["frames"]
    sr = float(args["sample_rate"])
    if plugin.is_instrument:
        # pedalboard renders instruments from MIDI; the main input is silent then.
        out = plugin(
            [], duration=frames / sr, sample_rate=sr, num_channels=2,
            buffer_size=args["block"], reset=True,
        )
    else:
        audio = np.full((2, frames), args["input"], dtype=np.float32)
        out = plugin(audio, sr, buffer_size=args["block"], reset=True)
    out = np.asarray(out, dtype="<f4")
    print(f"shape={out.shape[0]}x{out.shape[1]}")
    out.tofile(args["out"])


if __name__ == "__main__":
    main()
