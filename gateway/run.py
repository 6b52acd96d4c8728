"""The gateway agent: the SDS agent's cache, renewal and gRPC server, plus the claim feed and
the controller, serving the listener, the backends cluster and certificates over ADS."""
from __future__ import annotations

from sds_core.sds.agent import Agent, make_source
from sds_core.sds.resources import CLUSTER, LISTENER, ResourceStore
from sds_core.policy.config import ConfigStore

from .controller import Controller
from .feed import ClusterFeed, FileFeed
from .settings import GatewaySettings


def make_feed(s: GatewaySettings):
    if s.claims_file is not None:
        return FileFeed(s.claims_file, s.claims_file_poll_seconds)
    from sds_core.kube.client import api_client  # lazy: not for the claims file

    return ClusterFeed(api_client(s.kubeconfig), s.watch_seconds)


class GatewayAgent(Agent):
    def __init__(self, settings: GatewaySettings, feed=None):
        stores = {CLUSTER: ResourceStore(CLUSTER), LISTENER: ResourceStore(LISTENER)}
        # Readiness and expected names are the controller's (made below, once the agent's
        # renewer and cache exist).
        super().__init__(settings, sources={}, stores=stores, status=lambda: self.controller.status(),
                         knows=lambda name: self.controller.knows(name))
        config = ConfigStore(settings.injector_config_file)
        feed = feed or make_feed(settings)
        writer = None
        if isinstance(feed, ClusterFeed):  # claims in the cluster: their owners read the verdict there
            from .status import StatusWriter  # lazy: not for a claims file

            writer = StatusWriter(feed.api_client)
        self.controller = Controller(settings, config.get, feed, self.renewer, self.cache, stores,
                                     make_source(settings.source, settings), status_writer=writer)

    async def start(self) -> None:
        await super().start()
        self.controller.start()

    async def stop(self, grace: float = 1.0) -> None:
        self.controller.stop()
        await super().stop(grace)
