"""The kubelet pod-resources API (`v1.PodResourcesLister`): the real proto, its generated code, a client."""
