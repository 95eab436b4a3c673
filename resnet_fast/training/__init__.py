"""Pieces of the training entry point (``python -m resnet_fast.train``) and of ``resnet_fast.predict``.

One concern per module, in the order a run uses them:

  cli          arguments, per-data-set defaults, one-line usage errors
  models       the model for ``--arch`` (the package's zoo) and its inference form
  data         synthetic images, scikit-learn's digits, an ImageFolder tree
  distributed  torch.distributed setup (torchrun), ``--sync-bn``, reductions
  optim        SGD parameter groups and the warm-up + cosine/step schedule
  engine       one training epoch and one evaluation, with AMP and a progress bar
  checkpoint   atomic checkpoints with RNG states; clear errors when they do not fit
  logs         the per-epoch / per-step JSON-lines logs and the ``--plot`` curves
"""


class UsageError(Exception):
    """A mistake in the command line or its inputs, reported as one line and exit status 2."""
