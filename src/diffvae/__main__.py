from diffvae.cli import main

raise SystemExit(main())
