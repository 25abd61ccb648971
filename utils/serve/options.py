"""The attention editor's command-line options (explain.py --serve ...), kept apart from the
page itself so that explain.py lists them without importing the page's packages."""

PORT = 7860
MAX_UPLOAD_MB = 20
IDLE_MINUTES = 30  # a visitor's state, uploads and pictures are freed after this idle


def add_page_arguments(parser):
    """The page's option group on explain.py's parser."""
    page = parser.add_argument_group('the attention editor (needs requirements-serve.txt)')
    page.add_argument('--serve', action='store_true',
                      help='start a local web page to look at, edit and save attention maps '
                           '(images of --dataset, the IMAGE files, or uploads); edited maps '
                           'go to OUTPUT/edited_maps')
    page.add_argument('--host', default='127.0.0.1',
                      help='address the page listens on (default: %(default)s, this machine '
                           'only)')
    page.add_argument('--port', type=int, default=PORT,
                      help='port of the page (default: %(default)s)')
    page.add_argument('--auth', metavar='USER:PASSWORD',
                      help='a login for the page; needed with a --host other than this '
                           'machine\'s own (127.0.0.1, localhost, ::1)')
    page.add_argument('--auth-file', metavar='FILE',
                      help='the login as USER:PASSWORD on the first line of FILE (kept out of '
                           'the process list)')
    page.add_argument('--allowed-host', action='append', default=[], metavar='NAME',
                      help='a host name the page may be reached under besides the address it '
                           'listens on (a DNS name, a proxy\'s); repeat for more')
    page.add_argument('--max-upload-mb', type=float, default=MAX_UPLOAD_MB, metavar='MB',
                      help='largest upload the page accepts (default: %(default)s MB)')
    page.add_argument('--idle-minutes', type=float, default=IDLE_MINUTES, metavar='MIN',
                      help="a visitor's state, uploads and pictures are freed after this long "
                           "idle (default: %(default)s)")
    page.add_argument('--no-teach', action='store_true',
                      help='leave out the Teach section (fine-tuning runs started from the '
                           'page, into OUTPUT/taught/run-N), e.g. on a page shared with '
                           'people who should not start them')
