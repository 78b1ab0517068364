"""One HTTP/3 GET with aioquic, an HTTP/3 client independent of the gateway's own crates.

Usage: h3_aioquic.py PORT HOST CA_FILE  (connects to 127.0.0.1:PORT with SNI HOST, trusting CA_FILE)
Prints `status N` and `body TEXT`; exits non-zero on failure. Used by crates/berth-gateway/tests/it/h3.rs.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.status = None
        self.body = b""
        self.done = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        for http_event in self.http.handle_event(event):
            if isinstance(http_event, HeadersReceived):
                for name, value in http_event.headers:
                    if name == b":status":
                        self.status = int(value)
            elif isinstance(http_event, DataReceived):
                self.body += http_event.data
            if getattr(http_event, "stream_ended", False) and not self.done.done():
                self.done.set_result(True)

    async def get(self, host, path):
        stream_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", path.encode())],
            end_stream=True,
        )
        self.transmit()
        await asyncio.wait_for(self.done, 10)


async def main(port, host, ca_file):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    config.load_verify_locations(ca_file)
    async with connect("127.0.0.1", port, configuration=config, create_protocol=Client) as client:
        await client.get(host, "/")
        print(f"status {client.status}")
        print(f"body {client.body.decode(errors='replace')}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
