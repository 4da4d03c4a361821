"""placeholder"""

def add_args(p):
    pass

def run(args, cfg):
    raise NotImplementedError
