"""`python -m stages.settings`: see stages/settings/stage.py."""
from stages.core.cli import no_arguments, run_main
from stages.settings.stage import __doc__ as doc, main

run_main(main, "settings", parser=no_arguments("python -m stages.settings", doc))  # it takes none: any is refused
