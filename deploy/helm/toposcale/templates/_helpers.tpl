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
{{- end -}}
