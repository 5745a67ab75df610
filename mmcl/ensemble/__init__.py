"""Multi-stream score fusion: align by sample name, fuse with weights, search weights honestly.

The pieces, in the order ``mmcl ensemble`` uses them:

1. **Reading.** mmcl score files (``.npz``, see :mod:`mmcl.scores`) and the upstream format, a
   pickled ``{sample_name: score_vector}`` dict (CTR-GCN, MMCL-Action), read only through
   :mod:`mmcl.safe_pickle`.
2. **Aligning.** Every file is joined to the first file's row order **by sample name**. Differing
   name sets, class counts, duplicate names and NaN/inf scores are errors; ``intersect=True``
   keeps only the samples every file (and the label list) has.
3. **Labels** come from the files, from a name list through a dataset's naming rule (NTU:
   ``A### - 1``), or from a prepared dataset. Where two sources disagree, that is an error.
4. **Fusion.** ``sum_s w_s * normalize(scores_s)``, accumulated in float32 in stream order, the
   same arithmetic the upstream scripts use. Normalization is ``none`` (raw logits, as upstream),
   ``softmax`` or ``zscore`` (each stream's logits standardised per sample over the classes).
5. **Weight search** maximises top-1 by *coordinate ascent with an exact line search*:

   - Weights live in the box ``[0, 1]^S``. Fusion is scale-invariant, so the box loses nothing.
   - Start from equal weights. For one stream ``s`` at a time, hold the others fixed. Each
     sample is then correct for ``w_s`` in an interval (the true class must beat every other
     class, and each such condition is linear in ``w_s``). A sweep over the interval ends
     gives the exact top-1 for every ``w_s`` in ``[0, 1]``; take the best, keeping the current
     value on ties, otherwise the nearest best value (the midpoint of its segment).
   - Repeat rounds over the streams until a round changes nothing (at most ``max_rounds``).
     Top-1 never decreases, so it converges to a coordinate-wise optimum.
   - Finally rescale so the largest weight is 1 and round to 4 decimals. The reported
     accuracy is recomputed with exactly these printed weights.
   - The search counts strict wins (the true class above every other); reported top-1 is
     ``argmax == label`` everywhere. The two differ only on exact ties.
   - Only *threats* matter: (sample, class) pairs where some stream scores the class at least
     as high as the true class (:func:`find_threats`). A sample without threats is right for
     every non-negative weight vector, so the sweeps work on a few pairs per sample instead
     of all K classes, and the k folds of cross-fitting reuse the same threats.

6. **Honest protocols.** ``search_on`` (a validation set: weights never see the test labels) or
   k-fold cross-fitting on the test scores (each fold's weights come from the other folds; the
   out-of-fold top-1 is the reported figure and the searched-on-everything figure is shown
   beside it, labelled optimistic).

Modules: :mod:`~mmcl.ensemble.inputs` (reading, aligning), :mod:`~mmcl.ensemble.labels`,
:mod:`~mmcl.ensemble.fusion`, :mod:`~mmcl.ensemble.search`, :mod:`~mmcl.ensemble.run` (the
command as a function) and :mod:`~mmcl.ensemble.report`. They import NumPy only, never torch,
so the command starts in a fraction of a second.
"""

from mmcl.ensemble.fusion import (
    NORMALIZATIONS,
    accumulate_,
    format_weights,
    fuse,
    hits,
    normalize_,
    parse_weights,
)
from mmcl.ensemble.inputs import ScoreSet, detect_format, load_any, load_streams, open_streams, read_upstream_pickle
from mmcl.ensemble.labels import LabelSource, attach_labels, labels_from_dataset, labels_from_name_list
from mmcl.ensemble.report import render_report
from mmcl.ensemble.run import EnsembleRequest, run_ensemble
from mmcl.ensemble.search import SearchResult, Threats, find_threats, fold_split, search_weights

__all__ = [
    "NORMALIZATIONS", "EnsembleRequest", "LabelSource", "ScoreSet", "SearchResult", "Threats",
    "accumulate_", "attach_labels", "detect_format", "find_threats", "fold_split", "format_weights",
    "fuse", "hits", "labels_from_dataset", "labels_from_name_list", "load_any", "load_streams",
    "normalize_", "open_streams", "parse_weights", "read_upstream_pickle", "render_report",
    "run_ensemble", "search_weights",
]
