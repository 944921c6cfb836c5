"""Score saved image samples against the held-out test images: with the repository's
classifier (fd_classifier and, for labelled samples, the classifier's accuracy; NOT
Inception FID, `lfm_jax.classifier.DISCLAIMER`) and / or with standard FID from
pytorch-fid and local Inception weights (fid_inception, `lfm_jax.inception_fid`).

    python -m experiments.score_samples --classifier_workdir runs/clf_digits \
        --samples runs/fm_digits/samples_w1.npz runs/fm_digits/samples_w2.npz \
        [--inception_weights /path/pt_inception-2015-12-05-6726825d.pth] \
        [--data_path ../shared/data/mnist] [--out scores.json]
    python -m experiments.score_samples --reference_workdir runs/fm_digits \
        --inception_weights /path/pt_inception-2015-12-05-6726825d.pth \
        --samples runs/fm_digits/samples_w1.npz

Each samples file is an .npz with uint8 "images" (n, H, W, C) and optionally int
"labels" (n,), as the image jobs write them (samples_w<w>.npz, samples_uncond.npz;
`classifier_eval.save_samples`). The reference is the held-out test split of the data
settings recorded in --reference_workdir's config.json (default: the classifier's
workdir, whose split the jobs require to be the generators' own,
`validation.check_classifier_workdir`; or the generator's own workdir): data set,
source split, n_val / n_test, seed. --data_path replaces the recorded data.path
(MNIST / CIFAR-10 folders on another machine). Prints one line per file and writes
{file: {fd_classifier, accuracy, fid_inception, n_scored, ...}} as JSON to --out
(default classifier_scores.json, or fid_scores.json without a classifier, next to the
first samples file), with what each score is under "notes".
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier_workdir", default="",
                   help="workdir of a finished 'classifier' job")
    p.add_argument("--inception_weights", default="", help="local pytorch-fid Inception "
                   "weights file (pt_inception-2015-12-05-6726825d.pth): standard FID")
    p.add_argument("--reference_workdir", default="", help="a job workdir whose "
                   "config.json fixes the reference test split (default: the classifier's)")
    p.add_argument("--samples", nargs="+", required=True, help=".npz sample files")
    p.add_argument("--data_path", default=None, help="replaces the recorded data.path")
    p.add_argument("--out", default="", help="JSON output (default: classifier_scores.json, "
                   "or fid_scores.json without a classifier, next to the first samples file)")
    args = p.parse_args(argv)
    if not (args.classifier_workdir or args.inception_weights):
        p.error("give --classifier_workdir and / or --inception_weights")
    if not (args.reference_workdir or args.classifier_workdir):
        p.error("--inception_weights without --classifier_workdir needs --reference_workdir")
    return args


def reference_config(workdir: str, data_path=None):
    """A job's recorded config (workdir/config.json), data.path replaced if given."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: is {workdir} the workdir of a job?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if data_path is not None:
        config.data.path = data_path
    return config


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from lfm_jax import logging as log_lib
    from lfm_jax.classifier import DISCLAIMER
    from lfm_jax.runs import classifier_eval, image_data, image_eval

    if args.inception_weights:  # before the data: a missing file or package fails first
        from lfm_jax import inception_fid

        inception_fid.check_weights(args.inception_weights)
    ref_dir = args.reference_workdir or args.classifier_workdir
    reference = image_data.load(reference_config(ref_dir, args.data_path)).test
    score = image_eval.make_scorer(reference, classifier_workdir=args.classifier_workdir,
                                   inception_weights=args.inception_weights,
                                   example_shape=reference.shape[1:])
    scores, notes = {}, {}
    for path in args.samples:
        images, labels = classifier_eval.load_samples(path)
        s = score(images, labels)
        notes.update(s.pop("notes"))
        scores[path] = s
        print(f"{path}: " + "  ".join(f"{m} {s[m]:.4f}" for m in (
            *image_eval.SCORES, "accuracy") if m in s) + f"  (n = {s['n_scored']})")
    if "fid_inception" in notes:  # per file: its own n_scored
        notes["fid_inception"] = inception_fid.note(None, len(reference))
    name = "classifier_scores.json" if args.classifier_workdir else "fid_scores.json"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples[0])), name)
    result = {"scores": scores, "reference_workdir": os.path.abspath(ref_dir),
              "n_reference": int(len(reference)), "notes": notes}
    if args.classifier_workdir:
        result.update(classifier_workdir=os.path.abspath(args.classifier_workdir),
                      note=DISCLAIMER)
        print(f"({DISCLAIMER})")
    if args.inception_weights:
        result["inception_weights"] = os.path.abspath(args.inception_weights)
        print(f"({notes['fid_inception']})")
    log_lib.write_json(out, result)
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ImportError, ValueError) as e:
        sys.exit(f"error: {e}")
