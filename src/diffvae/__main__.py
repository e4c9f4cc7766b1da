import sys

try:
    from diffvae.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load (seconds with torch): one line, never a traceback
    print("diffvae: interrupted; nothing was written (outputs are written whole or not at all)", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
