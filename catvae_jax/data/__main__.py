"""Command line: prepare a data set on disk (the equivalent of the original `make data`).

    python -m catvae_jax.data prepare --source folder --path DIR --data_dir DIR --image_size 128
    python -m catvae_jax.data prepare --source synthetic --data_dir DIR --image_size 64

Prints what it built: location, TFDS name/config/version, counts per split and every skipped
file with its reason. Skipped files are not an error; a missing folder, or one without a valid
image, is a one-line error with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from catvae_jax import cli
from catvae_jax.data import builders


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every catvae_jax CLI
        cli.fail(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m catvae_jax.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    prep = sub.add_parser("prepare", help="build a TFDS data set (array_record) on disk")
    prep.add_argument("--source", choices=("folder", "synthetic"), required=True)
    prep.add_argument("--path", default="", help="folder of images (--source folder)")
    prep.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's own)")
    prep.add_argument("--image_size", type=int, default=128, help="side of the square images")
    prep.add_argument("--seed", type=int, default=0, help="synthetic: which cats are drawn")
    prep.add_argument("--num_train", type=int, default=4096, help="synthetic: train examples")
    prep.add_argument("--num_validation", type=int, default=256)
    prep.add_argument("--num_test", type=int, default=256)
    prep.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def report(prepared) -> str:
    """The multi-line report of a `builders.Prepared`."""
    p = prepared
    lines = [
        f"data set: {p.name}/{p.config}, version {p.version}",
        f"location: {p.path}",
        "examples: " + ", ".join(f"{s} {n}" for s, n in p.splits.items()),
    ]
    if p.content_sha256:
        lines.append(f"source content sha256: {p.content_sha256}")
    if p.skipped:
        lines.append(f"skipped {len(p.skipped)} files:")
        lines += [f"  {name}: {reason}" for name, reason in p.skipped]
    if p.ignored:
        shown = ", ".join(p.ignored[:10]) + (" ..." if len(p.ignored) > 10 else "")
        lines.append(f"ignored {len(p.ignored)} other files (hidden or not an image type): {shown}")
    if p.reused:
        lines.append("already prepared: reused")
    else:
        files = p.num_examples + len(p.skipped)
        lines.append(
            f"prepared {p.num_examples} images from {files} files in {p.seconds:.1f} s "
            f"({files / max(p.seconds, 1e-9):.0f} files/s)"
        )
    lines.append(f'read it with: tfds.builder_from_directory("{p.path}")')
    return "\n".join(lines)


@contextlib.contextmanager
def _os_errors():
    """A path that cannot be created or used (a file where a folder should be, no permission)
    is a one-line error, not a traceback."""
    try:
        yield
    except (NotADirectoryError, FileExistsError, PermissionError) as e:
        cli.fail(f"cannot prepare the dataset: {e.strerror or e}: '{e.filename}'")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    cli.quiet_logs()
    if args.image_size < 1:
        cli.fail(f"--image_size must be positive, got {args.image_size}")
    if hasattr(sys.stdout, "reconfigure"):  # file names may hold any character
        sys.stdout.reconfigure(errors="backslashreplace")
    with cli.user_errors(), _os_errors():
        if args.source == "folder":
            if not args.path:
                cli.fail("--path is required with --source folder")
            prepared = builders.prepare_folder(
                args.path, args.image_size, args.data_dir, progress=not args.no_progress
            )
        else:
            for name in ("num_train", "num_validation", "num_test"):
                if getattr(args, name) < 0:
                    cli.fail(f"--{name} must be >= 0")
            prepared = builders.prepare_synthetic(
                args.image_size,
                args.seed,
                args.num_train,
                args.num_validation,
                args.num_test,
                args.data_dir,
                progress=not args.no_progress,
            )
    print(report(prepared), flush=True)


if __name__ == "__main__":
    main()
