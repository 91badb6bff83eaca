"""One module per CLI subcommand, each with build_parser(parser) and main(args)."""
