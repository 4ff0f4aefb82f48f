"""Command line: prepare a data set on disk (the equivalent of the original `make data`).

    python -m catvae_jax.data prepare --source folder --path DIR --data_dir DIR --image_size 128
    python -m catvae_jax.data prepare --source synthetic --data_dir DIR --image_size 64
    python -m catvae_jax.data prepare --source oxford_cat_faces --data_dir DIR [--archives DIR]

Prints what it built: location, TFDS name/config/version, counts per split and every skipped
file with its reason. Skipped files are not an error; a missing folder, or one without a valid
image, is a one-line error with exit code 2. A failed download (no network) or a --data_dir
that cannot be written is a one-line environment failure, exit code 1.
"""

from __future__ import annotations

import contextlib
import sys

from absl import flags

from catvae_jax import cli
from catvae_jax.cli import plural
from catvae_jax.data import builders, oxford

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    sources = ["folder", "synthetic", "oxford_cat_faces"]
    flags.DEFINE_enum("source", None, sources, "What to prepare.")
    flags.DEFINE_string("path", "", "Folder of images (--source folder).")
    flags.DEFINE_string(
        "archives", "", "oxford_cat_faces: folder of images.tar.gz and annotations.tar.gz "
        "(default: download them to <data_dir>/downloads/oxford_iiit_pet)."
    )  # fmt: skip
    flags.DEFINE_float(
        "face_margin", oxford.DEFAULT_MARGIN,
        "oxford_cat_faces: added on every side of the head box, as a fraction of its side.",
        lower_bound=0, upper_bound=2,
    )  # fmt: skip
    flags.DEFINE_string("data_dir", "", "TFDS data_dir (default: TFDS's own).")
    flags.DEFINE_integer("image_size", 128, "Side of the square images.", lower_bound=1)
    cli.define_seed("Synthetic: which cats are drawn.")
    flags.DEFINE_integer("num_train", 4096, "Synthetic: train examples.", lower_bound=0)
    flags.DEFINE_integer("num_validation", 256, "Synthetic: validation examples.", lower_bound=0)
    flags.DEFINE_integer("num_test", 256, "Synthetic: test examples.", lower_bound=0)
    flags.DEFINE_bool("progress", True, "Show a progress bar (--noprogress: hide it).")
    flags.mark_flag_as_required("source")


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
    lines += [f"{what}: {n}" for what, n in p.counts.items()]
    if p.skipped:
        lines.append(f"skipped {plural(len(p.skipped), 'file')}:")
        lines += [f"  {name}: {reason}" for name, reason in p.skipped]
    if p.ignored:
        shown = ", ".join(p.ignored[:10]) + (" ..." if len(p.ignored) > 10 else "")
        ignored = plural(len(p.ignored), "other file")
        lines.append(f"ignored {ignored} (hidden or not an image type): {shown}")
    if p.reused:
        lines.append("already prepared: reused")
    elif p.from_files:
        files = p.num_examples + len(p.skipped)
        lines.append(
            f"prepared {plural(p.num_examples, 'image')} from {plural(files, 'file')} in "
            f"{p.seconds:.1f} s ({files / max(p.seconds, 1e-9):.0f} files/s)"
        )
    else:  # drawn, not read: no files
        lines.append(
            f"prepared {plural(p.num_examples, 'image')} in {p.seconds:.1f} s "
            f"({p.num_examples / max(p.seconds, 1e-9):.0f} images/s)"
        )
    lines.append(f'read it with: tfds.builder_from_directory("{p.path}")')
    return "\n".join(lines)


@contextlib.contextmanager
def _os_errors():
    """A --data_dir that cannot be a folder (a file where a folder should be) is a one-line
    user error; one that cannot be written (read-only, full, no permission) is a one-line
    environment failure, exit 1 (`builders.prepare` raises EnvironmentFailure)."""
    try:
        yield
    except (NotADirectoryError, FileExistsError) as e:
        cli.fail(f"cannot prepare the dataset: {e.strerror or e}: '{e.filename}'")


def main(argv: list[str]) -> None:
    if argv[1:] != ["prepare"]:
        cli.fail(f"expected the command 'prepare', got {' '.join(argv[1:]) or 'none'}")
    if hasattr(sys.stdout, "reconfigure"):  # file names may hold any character
        sys.stdout.reconfigure(errors="backslashreplace")
    progress = FLAGS.progress
    with cli.user_errors(), _os_errors():
        if FLAGS.source == "folder":
            if not FLAGS.path:
                cli.fail("--path is required with --source folder")
            prepared = builders.prepare_folder(
                FLAGS.path, FLAGS.image_size, FLAGS.data_dir, progress=progress
            )
        elif FLAGS.source == "oxford_cat_faces":
            prepared = builders.prepare_oxford(
                FLAGS.image_size, FLAGS.face_margin, FLAGS.archives, FLAGS.data_dir,
                progress=progress,
            )  # fmt: skip
        else:
            prepared = builders.prepare_synthetic(
                FLAGS.image_size, FLAGS.seed, FLAGS.num_train, FLAGS.num_validation,
                FLAGS.num_test, FLAGS.data_dir, progress=progress,
            )  # fmt: skip
    print(report(prepared), flush=True)


def run() -> None:
    cli.run_app(main, define_flags, positional=True)


if __name__ == "__main__":
    sys.exit(run())
