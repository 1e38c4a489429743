"""Serving policies to robots over openpi's websocket + msgpack protocol (`policytrim serve`).

- `policytrim.serve.wire`: msgpack with numpy arrays (openpi's encoding; never unpickles).
- `policytrim.serve.server`: `PolicyService` (metadata, validation, one policy call), `PolicyServer`
  (websockets' asyncio server, health check, API key), `serve_policy`.
- `policytrim.serve.client`: `PolicyClient` and `ActionChunkBroker` for the robot side.
- `policytrim.serve.robot_loop`: drives a Meta-World task through a running server, as a robot would.

Needs the ``serve`` extra (``pip install 'policytrim[serve]'``: websockets, msgpack); nothing here is
imported by the rest of the library.
"""
