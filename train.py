"""train.py: not implemented yet (see the issues)."""
import sys

if __name__ == '__main__':
    sys.exit('train.py: not implemented yet')
