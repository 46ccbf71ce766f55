"""What a trainer knows of clients: each payer's and operator's rejection rate from the escrow's
events, so it can refuse to bid for clients that reject much of the work they are given.

The book itself (incremental reads from the deployment block with a saved cursor, scoring) is
:class:`fedswarm.market.client_book.ClientBook`; the trainer only refreshes it in the background.
"""

from __future__ import annotations

import logging

import trio

from fedswarm.market.client_book import ClientBook as _Book

log = logging.getLogger("fedswarm.trainer")
REFRESH_S = 30.0


class ClientBook(_Book):
    """The escrow's settlements as seen by one trainer, refreshed in the background."""

    async def run(self) -> None:
        """Refresh every :data:`REFRESH_S` seconds; a failed read is logged and retried."""
        while True:
            try:
                await trio.to_thread.run_sync(self.refresh)
            except Exception as exc:  # the chain being away must not stop the trainer
                log.warning("client records not refreshed: %s", exc)
            await trio.sleep(REFRESH_S)
