"""A real FTP server for the tests: pyftpdlib on one loopback address, one user with every
right in ROOT, passive data connections on loopback too. Run by scripts/test.sh:

    python ftp_server.py HOST PORT ROOT USER PASSWORD
"""

import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    host, port, root, user, password = sys.argv[1:6]
    authorizer = DummyAuthorizer()
    # e l r a d f m w M T: every read and write right, renames and directories included.
    authorizer.add_user(user, password, root, perm="elradfmwMT")
    handler = FTPHandler
    handler.authorizer = authorizer
    handler.banner = "shoal test FTP server"
    server = FTPServer((host, int(port)), handler)
    server.max_cons = 256
    server.serve_forever()


if __name__ == "__main__":
    main()
