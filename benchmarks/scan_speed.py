"""How much faster an adapter builds its table with ``num_proc=2``: 2,000 small images, 2,000 DICOM copies.

    .venv/bin/python benchmarks/scan_speed.py                      # 2,000 files each, 5 rounds; ~1 min on 2 idle cores
    .venv/bin/python benchmarks/scan_speed.py --files 10000 --rounds 7 --num-proc 4

Building a table reads every record once: ``from_image_folder`` opens each image's header with PIL,
``from_dicom`` reads each file's header and decodes its first frame (``check_pixels``). Both corpora are written
to a temporary folder first: PNGs of a few sizes in two class folders, and copies of pydicom's ``CT_small.dcm``
(an uncompressed 128 x 128 CT slice). Each build runs once with its progress bar (what a user sees, and a warm
page cache), then the serial and the ``num_proc`` builds take turns, the order alternating each round, so drift
on a shared machine falls on both. Printed per corpus: each build's median seconds with its min and max, and
the per-round ratio serial / parallel (median, min, max), the number that survives a machine shared with other
work, and the CPU seconds each build used (this process + its workers), which show whether the second process
had a core to run on. The samples of both builds are checked to be identical.

Under Linux's autogroup scheduling a session's processes share one slice of the CPUs: on a machine whose cores
are busy with other sessions, ``num_proc`` processes get no more CPU than one, and the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from PIL import Image  # noqa: E402

from data_adapters import from_dicom, from_image_folder  # noqa: E402


def write_images(root: Path, count: int) -> Path:
    for i in range(count):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32 + i % 64, 32 + i % 48), (i % 256, 80, 160)).save(folder / f"{i:05d}.png")
    return root


def write_dicom_copies(root: Path, count: int) -> Path:
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm", download=False)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copy(source, root / f"{i:05d}.dcm")
    return root


def _cpu() -> float:
    """CPU seconds used so far by this process and by its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def seconds(build, num_proc: int, progress: bool = False) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds, sample ids) of one build."""
    cpu, start = _cpu(), time.perf_counter()
    dataset = build(num_proc=num_proc, progress=progress)
    return time.perf_counter() - start, _cpu() - cpu, dataset["id"]


def compare(name: str, build, num_proc: int, rounds: int) -> None:
    serial_ids = seconds(build, 1, progress=True)[2]
    parallel_ids = seconds(build, num_proc, progress=True)[2]
    assert serial_ids == parallel_ids, f"{name}: the builds differ"
    times: dict[int, list[float]] = {1: [], num_proc: []}
    cpus: dict[int, list[float]] = {1: [], num_proc: []}
    ratios = []
    for round_ in range(rounds):
        order = (1, num_proc) if round_ % 2 == 0 else (num_proc, 1)
        this_round = {n: seconds(build, n)[:2] for n in order}
        for n, (wall, cpu) in this_round.items():
            times[n].append(wall)
            cpus[n].append(cpu)
        ratios.append(this_round[1][0] / this_round[num_proc][0])
    print(f"\n{name}: {len(serial_ids)} samples, {rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    for n, values in times.items():
        print(f"  num_proc={n}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}); "
              f"CPU {statistics.median(cpus[n]):.2f} s")
    print(f"  serial / num_proc={num_proc}: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="scan-speed-") as tmp:
        images = write_images(Path(tmp) / "images", args.files)
        compare("from_image_folder (PIL headers)", lambda **kw: from_image_folder(images, **kw), args.num_proc,
                args.rounds)
        try:
            scans = write_dicom_copies(Path(tmp) / "dicom", args.files)
        except ImportError:
            print('\nfrom_dicom: skipped (pip install "plm-tune[dicom]")')
            return
        compare("from_dicom (header + first frame)",
                lambda **kw: from_dicom(scans, caption="{Modality}", **kw), args.num_proc,
                args.rounds)


if __name__ == "__main__":
    main()
