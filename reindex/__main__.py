from reindex.cli import main

raise SystemExit(main())
