"""Hash every file in a folder, in parallel, with a progress bar.

    python examples/hash_files.py FOLDER [--algorithm sha256] [--workers N]
    python examples/hash_files.py --small      # on a temporary folder of generated files

Prints one ``digest  path`` line per file, like ``sha256sum``. Only paths travel to the workers;
each worker reads and hashes its files itself, so nothing big is pickled.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from parallelize import parallel

CHUNK_BYTES = 1 << 20  # read 1 MiB at a time: big files never sit in memory whole


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of one file's contents."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as file:
        while block := file.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def hash_folder(
    folder: Path, algorithm: str = "sha256", workers: int | None = None
) -> dict[Path, str]:
    """Every regular file under ``folder``, mapped to its digest."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    hash_many = parallel(file_digest, workers=workers, progress={"desc": algorithm, "unit": "file"})
    digests = hash_many(paths, algorithm=algorithm)  # keyword arguments go to every call
    return dict(zip(paths, digests, strict=True))


def make_files(folder: Path, count: int = 40, size: int = 50_000) -> None:
    """Write ``count`` files of pseudo-random bytes under ``folder``, some in a subfolder."""
    for index in range(count):
        sub = folder / ("nested" if index % 4 == 0 else "")
        sub.mkdir(exist_ok=True)
        data = hashlib.sha256(str(index).encode()).digest() * (size // 32)
        (sub / f"file{index:03}.bin").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="the folder to hash")
    parser.add_argument(
        "--algorithm", default="sha256", choices=sorted(hashlib.algorithms_guaranteed)
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="hash a temporary folder it makes")
    args = parser.parse_args(argv)
    if args.small:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            make_files(folder)
            digests = hash_folder(folder, args.algorithm, args.workers)
            expected = {path: file_digest(path, args.algorithm) for path in digests}
            assert digests == expected, "parallel digests differ from serial ones"
            print(f"hashed {len(digests)} files; all digests match a serial run")
        return 0
    if args.folder is None or not args.folder.is_dir():
        parser.error("give a folder to hash, or --small")
    for path, digest in hash_folder(args.folder, args.algorithm, args.workers).items():
        print(f"{digest}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
