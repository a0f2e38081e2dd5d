"""Coverage-guided fuzzing (atheris, libFuzzer) of the OVF and VMX parsers.

The parsers read untrusted descriptors; the only exception they may raise is their own clear
error (``OvfError``/``VmxError``, both ``UsageError``s). Anything else, a hang or a crash is a
finding: libFuzzer prints the input and exits non-zero.

Each input is one of five things, by its first byte:
- 0: raw bytes for the OVF parser;
- 1: raw bytes for the VMX parser;
- 3: raw bytes as an ``.ova`` file (the tar reader and the descriptor it finds);
- 4: raw bytes as a gzip-compressed disk stream, in two pieces (a chunked file);
- 2: a real descriptor (from ``tests/disks/real_ovf``) with the value of one attribute or
  element that matters (capacities and their units, chunk sizes, compression, startup order,
  host resources, quantities) replaced by fuzzed text: mutating whole XML rarely gets past the
  XML parser, this reaches the semantic code.

Run by hand:  python tests/fuzz/fuzz_parsers.py -max_total_time=60 CORPUS_DIR [SEED_DIR...]
(``tests/fuzz/test_fuzz.py`` runs it for a bounded time, seeded with the real descriptors).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from rehost.disks import ova, ovf, streams, vmx

REAL = Path(__file__).resolve().parent.parent / "disks" / "real_ovf"
SEEDS = [p.read_bytes() for p in sorted((REAL / "ovf").glob("*.ovf")) if p.stat().st_size < 64 << 10]
#: attributes and elements whose values the parser interprets
TARGETS = [rb'capacity="[^"]*"', rb'capacityAllocationUnits="[^"]*"', rb'chunkSize="[^"]*"',
           rb'compression="[^"]*"', rb'order="[^"]*"', rb'startDelay="[^"]*"', rb'fileRef="[^"]*"',
           rb'diskId="[^"]*"', rb'href="[^"]*"', rb'ovf:id="[^"]*"', rb'configuration="[^"]*"',
           rb"<rasd:HostResource>[^<]*<", rb"<rasd:VirtualQuantity>[^<]*<",
           rb"<rasd:AllocationUnits>[^<]*<", rb"<rasd:ResourceType>[^<]*<", rb'value="[^"]*"']


OVA = Path(tempfile.mkdtemp(prefix="rehost-fuzz-")) / "fuzz.ova"


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 5, data[1:]
    try:
        if mode == 0:
            ovf.parse_descriptor(rest, "fuzz.ovf")
        elif mode == 1:
            vmx.parse(rest, "fuzz.vmx")
        elif mode == 3:
            OVA.write_bytes(rest)
            ova.envelope(OVA)
        elif mode == 4:
            OVA.write_bytes(rest)
            half = len(rest) // 2
            pieces = [streams.Piece(OVA, 0, half), streams.Piece(OVA, half, len(rest) - half)]
            for _ in streams.read_stream(pieces, "gzip", "fuzz.vmdk.gz"):
                pass
        else:
            ovf.parse_descriptor(_splice(rest), "fuzz-spliced.ovf")
    except (ovf.OvfError, vmx.VmxError):
        pass  # the clear error: what untrusted input may cause


def _splice(data: bytes) -> bytes:
    """A real descriptor with the values of one target (every occurrence, or one) replaced."""
    fdp = atheris.FuzzedDataProvider(data)
    seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    target = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    every = fdp.ConsumeBool()
    value = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;").encode()

    def swap(m: re.Match[bytes]) -> bytes:
        text = m.group(0)
        if text.endswith(b'"'):
            return text[: text.index(b'"') + 1] + escaped + b'"'
        return text[: text.index(b">") + 1] + escaped + b"<"

    return re.sub(target, swap, seed, count=0 if every else 1)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
