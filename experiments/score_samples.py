"""Score saved image samples with the repository's classifier: fd_classifier against the
held-out test images and, for labelled samples, the classifier's accuracy on them.
NOT Inception FID (`lfm_jax.classifier.DISCLAIMER`).

    python -m experiments.score_samples --classifier_workdir runs/clf_digits \
        --samples runs/fm_digits/samples_w1.npz runs/fm_digits/samples_w2.npz \
        [--data_path ../shared/data/mnist] [--out scores.json]

Each samples file is an .npz with uint8 "images" (n, H, W, C) and optionally int
"labels" (n,), as the image jobs write them (samples_w<w>.npz, samples_uncond.npz;
`classifier_eval.save_samples`). The reference is the held-out test split of the data
settings the classifier was trained with (its workdir's config.json: data set, source
split, n_val / n_test, seed), which the jobs require to be the generators' own
(`validation.check_classifier_workdir`); --data_path replaces the recorded data.path
(MNIST / CIFAR-10 folders on another machine). Prints one line per file and writes
{file: {fd_classifier, accuracy, n_scored, ...}} as JSON to --out (default
classifier_scores.json next to the first samples file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier_workdir", required=True,
                   help="workdir of a finished 'classifier' job")
    p.add_argument("--samples", nargs="+", required=True, help=".npz sample files")
    p.add_argument("--data_path", default=None, help="replaces the recorded data.path")
    p.add_argument("--out", default="", help="JSON output (default: "
                   "classifier_scores.json next to the first samples file)")
    return p.parse_args(argv)


def reference_config(classifier_workdir: str, data_path=None):
    """The classifier job's recorded config (config.json), data.path replaced if given."""
    import ml_collections

    path = os.path.join(classifier_workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: is {classifier_workdir} the workdir "
                                f"of a 'classifier' job?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if data_path is not None:
        config.data.path = data_path
    return config


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from lfm_jax import logging as log_lib
    from lfm_jax.classifier import DISCLAIMER
    from lfm_jax.runs import classifier_eval, image_data

    model, params = classifier_eval.load(args.classifier_workdir)
    reference = image_data.load(reference_config(args.classifier_workdir,
                                                 args.data_path)).test
    scores = {}
    for path in args.samples:
        images, labels = classifier_eval.load_samples(path)
        s = classifier_eval.score(model, params, images, reference, labels)
        s.pop("notes")
        scores[path] = s
        acc = f"  accuracy {s['accuracy']:.4f}" if "accuracy" in s else ""
        print(f"{path}: fd_classifier {s['fd_classifier']:.4f}{acc}  (n = {s['n_scored']})")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples[0])),
                                   "classifier_scores.json")
    result = {"scores": scores, "classifier_workdir": os.path.abspath(args.classifier_workdir),
              "n_reference": int(len(reference)), "note": DISCLAIMER}
    log_lib.write_json(out, result)
    print(f"({DISCLAIMER})\nwritten to {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
