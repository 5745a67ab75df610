"""NTU RGB+D sample names: ``SsssCcccPpppRrrrAaaa`` (setup, camera, performer, replication, action).

The action number is 1-based, so a sample's 0-based label is ``A### - 1``. This module is the one
place that rule lives; dataset readers and ``mmcl ensemble --labels`` both use it.
"""

from __future__ import annotations

import re

from mmcl.errors import MMCLError

_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
_FIELDS = ("setup", "camera", "subject", "replication", "action")


def parse_ntu_name(name: str) -> dict[str, int]:
    """Split an NTU sample name into its numbered fields (all 1-based, as written in the name).

    Accepts the bare name (``S001C001P001R001A001``), the raw file name
    (``S001C001P001R001A001.skeleton``) and a path to it. Anything else is an MMCLError.
    """
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    if stem.endswith(".skeleton"):
        stem = stem[: -len(".skeleton")]
    match = _NTU_NAME.fullmatch(stem)
    if match is None:
        raise MMCLError(
            f"{name!r} is not an NTU RGB+D sample name: expected SsssCcccPpppRrrrAaaa "
            "(e.g. S001C001P001R001A001, optionally with .skeleton)"
        )
    fields = dict(zip(_FIELDS, (int(g) for g in match.groups())))
    for key, value in fields.items():
        if value < 1:
            raise MMCLError(f"{name!r}: the {key} number must be at least 1 (NTU numbers are 1-based)")
    return fields


def ntu_label(name: str) -> int:
    """The 0-based class of an NTU sample: its action number ``A###`` minus one."""
    return parse_ntu_name(name)["action"] - 1
