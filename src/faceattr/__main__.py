from faceattr.cli.app import main

main()
