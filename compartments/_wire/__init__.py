"""The wire: msgpack-RPC frames, the bounded decoder, channels, fds and errors as data."""
