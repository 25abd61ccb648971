"""Who may use the attention editor's page: the address it listens on, a password when that
address is not this machine's own, and the names a request may come under.

- `--host` other than a loopback address serves everyone who can reach the machine, and
  every handler (saving included) is an API: refused unless `--auth USER:PASSWORD` or
  `--auth-file FILE` gives a login, and announced with one line saying who can reach it.
- `TrustedHosts`: a request whose Host header, or Origin header when it has one, names another
  machine than the one served is refused with 403 before Gradio sees it. A web page that
  rebinds its own DNS name to 127.0.0.1 then cannot drive the page from a visitor's browser:
  its requests carry its own name. `--allowed-host NAME` adds the names a proxy or a DNS name
  serves the page under; serving every address (`--host 0.0.0.0`), any IP address is allowed.
"""
import ipaddress
import socket
from urllib.parse import urlsplit

from utils.errors import AbnError

LOOPBACK_NAMES = ('localhost', '127.0.0.1', '::1')


def is_loopback(host):
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_login(auth=None, auth_file=None):
    """(user, password) from `--auth USER:PASSWORD` or the first line of `--auth-file`, or
    None when neither is given."""
    if auth and auth_file:
        raise AbnError('give --auth or --auth-file, not both')
    source = '--auth'
    if auth_file:
        source = f'--auth-file {auth_file}'
        try:
            with open(auth_file) as f:
                auth = f.readline().strip()
        except OSError as error:
            raise AbnError(f'cannot read {source}: {error.strerror}') from None
    if auth is None:
        return None
    user, colon, password = auth.partition(':')
    if not colon or not user or not password:
        raise AbnError(f'{source} takes USER:PASSWORD, both non-empty')
    return user, password


def check_exposure(host, login):
    """Refuses an address other than this machine's own without a login; returns the line
    that says who can reach the page, or None for a loopback address."""
    if is_loopback(host):
        return None
    if login is None:
        raise AbnError(f'--host {host} lets anyone who can reach this machine use the page, '
                       f'saving maps included: give a login with --auth USER:PASSWORD (or '
                       f'--auth-file FILE), or keep the default --host 127.0.0.1')
    everyone = host in ('0.0.0.0', '::')
    return (f'note: the page listens on {"every address of this machine" if everyone else host}'
            f': whoever can reach it on the network and has the login can use it, saving '
            f'maps included (traffic is not encrypted: put it behind HTTPS to go further)')


def served_names(host, allowed=()):
    """The host names a request may carry: the address served, this machine's names when it
    serves every address, loopback names when it serves loopback, and `allowed`."""
    names = {host.strip('[]').lower(), *(name.lower() for name in allowed)}
    if is_loopback(host):
        names.update(LOOPBACK_NAMES)
    if host in ('0.0.0.0', '::'):
        names.update(LOOPBACK_NAMES)
        hostname = socket.gethostname()
        names.update({hostname.lower(), socket.getfqdn().lower()})
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(hostname, None))
        except OSError:
            pass
    return names


def host_name(value):
    """'example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1'."""
    value = value.strip().lower()
    if value.startswith('['):
        return value[1:value.find(']')] if ']' in value else value
    return value.rsplit(':', 1)[0] if value.count(':') == 1 else value


def is_ip_address(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class TrustedHosts:
    """ASGI middleware: 403 for an HTTP or WebSocket request whose Host, or Origin when
    present, names a machine outside `names`. `any_address`: the page serves every address
    of the machine, so any literal IP address is its own (DNS rebinding needs a name).
    `Origin: null` (a sandboxed frame, a file:// page) is refused: it names no one."""

    def __init__(self, app, names, any_address=False):
        self.app, self.names, self.any_address = app, frozenset(names), any_address

    def known(self, name):
        return name in self.names or (self.any_address and is_ip_address(name))

    def allowed(self, scope):
        headers = {k.decode('latin-1').lower(): v.decode('latin-1')
                   for k, v in scope.get('headers', ())}
        if not self.known(host_name(headers.get('host', ''))):
            return False
        origin = headers.get('origin')
        if origin is not None:
            return origin != 'null' and self.known((urlsplit(origin).hostname or '').lower())
        return True

    async def __call__(self, scope, receive, send):
        if scope['type'] in ('http', 'websocket') and not self.allowed(scope):
            if scope['type'] == 'websocket':
                await send({'type': 'websocket.close', 'code': 1008})
                return
            body = (b'This host name is not served here: start the page with '
                    b'--allowed-host NAME to allow it.\n')
            await send({'type': 'http.response.start', 'status': 403,
                        'headers': [(b'content-type', b'text/plain; charset=utf-8'),
                                    (b'content-length', str(len(body)).encode())]})
            await send({'type': 'http.response.body', 'body': body})
            return
        await self.app(scope, receive, send)


def trusted_hosts_middleware(host, allowed=()):
    """The FastAPI `middleware=` entry for Gradio's app (launch(app_kwargs=...))."""
    from starlette.middleware import Middleware
    return Middleware(TrustedHosts, names=served_names(host, allowed),
                      any_address=host in ('0.0.0.0', '::'))

