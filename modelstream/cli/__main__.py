from modelstream.cli.main import main

main()
