{{/* The extenders: entry calling this release's extender (both scheduler modes). */}}
{{- define "toposcale.extenders" -}}
extenders:
  - urlPrefix: {{ include "toposcale.extenderUrl" . }}
    filterVerb: filter
    prioritizeVerb: prioritize
    # Extender scores are 0..10, multiplied by weight x 10 on top of the default plugins (about 1,200 points
    # at most): weight 5 adds up to 500, enough to decide between nodes that otherwise tie.
    weight: {{ .Values.extender.weight }}
    # The extender watches Nodes itself: the scheduler sends node names, not whole Node objects.
    nodeCacheCapable: true
    enableHTTPS: false
    httpTimeout: 2s
    # Only pods asking for GPUs go to the extender; the scheduler keeps counting nvidia.com/gpu itself.
    managedResources:
      - name: nvidia.com/gpu
        ignoredByScheduler: false
    # If the extender is down or errors, pods are still scheduled (without topology awareness) rather than
    # left Pending.
    ignorable: true
{{- end -}}

{{/*
KubeSchedulerConfiguration of the second scheduler (deploy/extender/scheduler-config.yaml, which
tests/helm compares it with; field names: k8s.io/kube-scheduler/config/v1/types.go, decoded strictly).
*/}}
{{- define "toposcale.schedulerConfig" -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceNamespace: {{ .Release.Namespace }}
  resourceName: {{ include "toposcale.fullname" . }}-scheduler
profiles:
  - schedulerName: {{ .Values.scheduler.profileName }}
    # Score every feasible node, not the first 5-50% found: the extender's topology score then picks among
    # every node that fits (deploy/extender/scheduler-config.yaml says more).
    percentageOfNodesToScore: 100
    # Bin-pack GPUs (NodeResourcesFit MostAllocated on nvidia.com/gpu) under the extender's topology score:
    # LeastAllocated spreads pods over GPU boxes and strands GPUs no 4-GPU pod can use.
    pluginConfig:
      - name: NodeResourcesFit
        args:
          scoringStrategy:
            type: MostAllocated
            resources:
              - name: nvidia.com/gpu
                weight: 1
{{ include "toposcale.extenders" . }}
{{- end -}}

{{/*
For scheduler.mode=default-scheduler: the cluster's own kube-scheduler calling the extender
(deploy/extender/default-scheduler/kube-scheduler-config.yaml; README.md there says where it goes).
*/}}
{{- define "toposcale.defaultSchedulerConfig" -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: /etc/kubernetes/scheduler.conf
leaderElection:
  leaderElect: true
profiles:
  - schedulerName: default-scheduler
    percentageOfNodesToScore: 100
# The control-plane node resolves Service DNS only if it uses the cluster DNS; most kubeadm control planes do
# not. Use the extender Service's ClusterIP there (kubectl get svc {{ include "toposcale.fullname" . }}-extender).
{{ include "toposcale.extenders" . }}
{{- end -}}
