"""Allow ``python -m mmcl`` and ``accelerate launch -m mmcl``."""

from mmcl.cli import main

if __name__ == "__main__":
    main()
