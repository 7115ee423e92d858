"""placeholder"""
def add_analyze_subcommands(sub):
    pass
def run_analyze_command(args):
    return 0
