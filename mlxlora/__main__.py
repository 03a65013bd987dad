from mlxlora.cli import main

raise SystemExit(main())
