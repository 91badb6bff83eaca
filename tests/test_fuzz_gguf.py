"""Fuzzing the GGUF reader: a small valid file with bytes, counts and lengths overwritten or cut short must
load or raise WeightsError: never any other exception, a hang or a large allocation."""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tinygemma.errors import WeightsError  # noqa: E402
from tinygemma.export.gguf import save_gguf  # noqa: E402
from tinygemma.weights import load_weights  # noqa: E402

from tinymodels import random_tensors, tiny_config, tiny_tokenizer  # noqa: E402

SECONDS = 5.0                 # per load: the bound for any crafted file
PEAK_BYTES = 32 << 20         # Python + numpy allocations per load (a valid load: ~1 MB; the file: ~0.7 MB)
# Values that make counts, lengths and types lie: zero, off by one, type ids, widths, huge.
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 10, 12, 13, 31, 32, 33, 255, 256, 0xFFFF, 1 << 20, (1 << 20) + 1,
               0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, (1 << 64) - 1]


def header_fields(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """(offset, width) of every count, length, type and offset in the header, metadata and tensor infos, and
    where the tensor infos end: an independent walk of the format, to aim mutations at the structure."""
    fields = [(4, 4), (8, 8), (16, 8)]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(pos):
        fields.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    for _ in range(n_kv):
        pos = string(pos)
        fields.append((pos, 4))
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if vtype == 8:
            pos = string(pos)
        elif vtype == 9:
            fields += [(pos, 4), (pos + 4, 8)]
            itype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if itype == 8:
                for _ in range(count):
                    pos = string(pos)
            else:
                pos += sizes[itype] * count
        else:
            fields.append((pos, sizes[vtype]))
            pos += sizes[vtype]
    for _ in range(n_tensors):
        pos = string(pos)
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields += [(pos + 4 * 0, 4), *((pos + 4 + 8 * i, 8) for i in range(n_dims))]
        pos += 4 + 8 * n_dims
        fields += [(pos, 4), (pos + 4, 8)]
        pos += 12
    return fields, pos


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    cfg = tiny_config()
    path = tmp_path_factory.mktemp("fuzz") / "valid.gguf"
    save_gguf(path, cfg, random_tensors(cfg), tiny_tokenizer())
    data = path.read_bytes()
    fields, end = header_fields(data)
    assert load_weights(path).config == cfg
    return path.parent, data, fields, end


@st.composite
def mutated(draw, data: bytes, fields: list[tuple[int, int]], end: int) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "field", "byte", "tail"]))
        if kind == "field":                      # a count, length, type or offset lies
            pos, width = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1))
            out[pos:pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "byte":                     # anywhere in the header, metadata or tensor infos
            pos = draw(st.integers(0, end - 1))
            out[pos] = draw(st.integers(0, 255))
        else:                                    # the data section: only the weights' values change
            pos = draw(st.integers(end, len(out) - 1))
            out[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        out = out[:draw(st.integers(0, len(out)))]
    return bytes(out)


def test_mutated_gguf_loads_or_raises_weights_error(valid):
    folder, data, fields, end = valid
    path = folder / "mutated.gguf"

    @settings(max_examples=1000, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(data, fields, end))
    def check(blob):
        path.write_bytes(blob)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            load_weights(path)
        except WeightsError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        finally:
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert seconds < SECONDS
        assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MB"

    check()
