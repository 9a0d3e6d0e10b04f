from nin_cli.cli import main

main()
