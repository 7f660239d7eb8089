from recfunnel.cli import main

raise SystemExit(main())
