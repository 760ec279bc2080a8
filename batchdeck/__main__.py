from batchdeck.cli import main

raise SystemExit(main())
