{{/*
The prefix of every object name: the release name if it contains the chart name (release `toposcale` ->
toposcale-adapter, ..., the names of deploy/all), else <release>-<chart>. 52 characters at most, so
<fullname>-adapter-auth-reader and the like stay within 63.
*/}}
{{- define "toposcale.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "toposcale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (dict "ctx" $ "component" "adapter") */}}
{{- define "toposcale.selectorLabels" -}}
app.kubernetes.io/name: toposcale-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* All labels of a component's objects (the labels of deploy/ plus Helm's own). */}}
{{- define "toposcale.labels" -}}
{{- if .component -}}
app.kubernetes.io/name: toposcale-{{ .component }}
{{ end -}}
app.kubernetes.io/part-of: toposcale
{{ include "toposcale.helmLabels" .ctx }}
{{- end -}}

{{- define "toposcale.helmLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "toposcale.chart" . }}
{{- end -}}

{{/* Pod template labels: (dict "ctx" $ "component" "adapter") */}}
{{- define "toposcale.podLabels" -}}
app.kubernetes.io/name: toposcale-{{ .component }}
app.kubernetes.io/part-of: toposcale
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* A component's ServiceAccount name: (dict "ctx" $ "component" "adapter") */}}
{{- define "toposcale.serviceAccountName" -}}
{{- printf "%s-%s" (default (include "toposcale.fullname" .ctx) .ctx.Values.serviceAccount.name) .component -}}
{{- end -}}

{{- define "toposcale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) -}}
{{- end -}}

{{/* The adapter Service's DNS name, which its serving certificate is for and kube-apiserver dials. */}}
{{- define "toposcale.adapterHost" -}}
{{- printf "%s-adapter.%s.svc" (include "toposcale.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "toposcale.extenderUrl" -}}
{{- printf "http://%s-extender.%s.svc:8888" (include "toposcale.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
nodeSelector, tolerations, affinity and imagePullSecrets of a pod; `affinity` falls back to `default`
(the spreading anti-affinity of deploy/). (dict "ctx" $ "v" .Values.adapter "default" $aff)
*/}}
{{- define "toposcale.placement" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .default .v.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The preferred anti-affinity spreading a Deployment's replicas: (dict "ctx" $ "component" "adapter") */}}
{{- define "toposcale.spread" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "toposcale.selectorLabels" . | nindent 12 }}
{{- end -}}

{{/* The pod securityContext of the non-root components. */}}
{{- define "toposcale.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "toposcale.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* The adapter's rules file: adapter.rules if set, else files/rules.yaml byte for byte. */}}
{{- define "toposcale.rulesFile" -}}
{{- if .Values.adapter.rules -}}
{{- toYaml (dict "rules" .Values.adapter.rules) -}}
{{- else -}}
{{- .Files.Get "files/rules.yaml" -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks values.schema.json cannot word well. */}}
{{- define "toposcale.validate" -}}
{{- if and (eq .Values.adapter.mode "prometheus") (not .Values.adapter.prometheusUrl) -}}
{{- fail "adapter.mode is prometheus: set adapter.prometheusUrl too (e.g. --set adapter.prometheusUrl=http://prometheus-operated.monitoring.svc:9090)" -}}
{{- end -}}
{{- if and (ne .Values.adapter.mode "prometheus") .Values.adapter.prometheusUrl -}}
{{- fail "adapter.prometheusUrl is set but adapter.mode is scrape: set adapter.mode=prometheus to query it" -}}
{{- end -}}
{{- if not (include "toposcale.rulesFile" .) -}}
{{- fail "files/rules.yaml is missing from the chart: run python deploy/generate.py" -}}
{{- end -}}
{{- include "toposcale.clusterChecks" . -}}
{{- end -}}

{{/* "true" when the release registers custom.metrics.k8s.io/v1beta2 (opt-in), else empty. */}}
{{- define "toposcale.customMetrics" -}}
{{- if .Values.adapter.customMetrics.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Checks against the cluster the release goes to (what `toposcale preflight` checks for kustomize). `lookup`
answers only where helm talks to a cluster (install, upgrade, --dry-run=server); in `helm template`, `lint` and
--dry-run=client it is empty and nothing is checked.
- An APIService of a group this release would register (external.metrics.k8s.io unless
  adapter.apiService.enabled=false or the KEDA variant; custom.metrics.k8s.io with adapter.customMetrics.enabled)
  that another backend serves: refused, naming it, unless forced. One backend per group version, and the
  preferred version of a group answers every HPA in the cluster: registering would take the API over.
- adapter.tls.mode=cert-manager without cert-manager's Certificate kind: the APIService could never get a CA.
*/}}
{{- define "toposcale.clusterChecks" -}}
{{- $fullname := include "toposcale.fullname" . -}}
{{- $connected := lookup "v1" "Namespace" "" "kube-system" -}}
{{- if and $connected (eq .Values.adapter.tls.mode "cert-manager") (not (.Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate")) -}}
{{- fail "adapter.tls.mode=cert-manager, but the cluster serves no cert-manager.io/v1 Certificate: install cert-manager first, or use adapter.tls.mode=self-signed (the default; docs/install.md)" -}}
{{- end -}}
{{- $claims := dict -}}
{{- if and .Values.adapter.apiService.enabled (not .Values.adapter.keda.enabled) (not .Values.adapter.apiService.force) -}}
{{- $_ := set $claims "external.metrics.k8s.io" "external" -}}
{{- end -}}
{{- if and (include "toposcale.customMetrics" .) (not .Values.adapter.customMetrics.force) -}}
{{- $_ := set $claims "custom.metrics.k8s.io" "custom" -}}
{{- end -}}
{{- range (lookup "apiregistration.k8s.io/v1" "APIService" "" "").items | default list -}}
{{- $claim := get $claims (.spec.group | toString) -}}
{{- $svc := .spec.service | default dict -}}
{{- $ours := and (eq (get $svc "name" | toString) (printf "%s-adapter" $fullname)) (eq (get $svc "namespace" | toString) $.Release.Namespace) -}}
{{- if and $claim (not $ours) -}}
{{- $labels := .metadata.labels | default dict -}}
{{- $where := ternary (printf "Service %s/%s" (get $svc "namespace" | toString) (get $svc "name" | toString)) "kube-apiserver itself (Local)" (not (empty $svc)) -}}
{{- $text := printf "%s %s" (toJson $labels) $where | lower -}}
{{- $owner := "another provider" -}}
{{- if contains "keda" $text -}}{{- $owner = "KEDA" -}}
{{- else if contains "prometheus-adapter" $text -}}{{- $owner = "prometheus-adapter" -}}
{{- else if contains "toposcale" $text -}}{{- $owner = "another toposcale install" -}}
{{- end -}}
{{- if eq $claim "external" -}}
{{- fail (printf "APIService %s is already served by %s (%s): registering v1beta1.external.metrics.k8s.io would take external.metrics.k8s.io over for the whole cluster. %s Or set adapter.apiService.enabled=false; adapter.apiService.force=true replaces it anyway (docs/install.md)." .metadata.name $owner $where (ternary "Install the KEDA variant instead: --set adapter.keda.enabled=true (toposcale as KEDA's external scaler)." "" (eq $owner "KEDA"))) -}}
{{- else -}}
{{- fail (printf "APIService %s is already served by %s (%s): registering v1beta2.custom.metrics.k8s.io would make toposcale the preferred version of custom.metrics.k8s.io, which every HPA's Pods and Object metrics are read from. Leave adapter.customMetrics.enabled=false (the default); adapter.customMetrics.force=true takes the group over anyway (docs/install.md)." .metadata.name $owner $where) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
