{{/* Chart name, or nameOverride. */}}
{{- define "edgewire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else the release name,
suffixed with the chart name unless the release name already holds it.
Kept short enough for "-coordinator" to fit in 63 characters.
*/}}
{{- define "edgewire.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "edgewire.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "coordinator"). */}}
{{- define "edgewire.labels" -}}
helm.sh/chart: {{ include "edgewire.chart" .ctx }}
{{ include "edgewire.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: edgewire
{{- end }}

{{- define "edgewire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgewire.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Image reference; call with (dict "ctx" $ "image" .Values.coordinator.image). */}}
{{- define "edgewire.image" -}}
{{- $img := merge (deepCopy (default dict .image)) .ctx.Values.image }}
{{- $tag := default .ctx.Chart.AppVersion $img.tag }}
{{- if $img.registry }}
{{- printf "%s/%s:%s" $img.registry $img.repository $tag }}
{{- else }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}
{{- end }}

{{- define "edgewire.pullPolicy" -}}
{{- (merge (deepCopy (default dict .image)) .ctx.Values.image).pullPolicy }}
{{- end }}

{{- define "edgewire.coordinator.name" -}}
{{- printf "%s-coordinator" (include "edgewire.fullname" .) }}
{{- end }}

{{- define "edgewire.relay.name" -}}
{{- printf "%s-relay" (include "edgewire.fullname" .) }}
{{- end }}

{{- define "edgewire.agent.name" -}}
{{- printf "%s-agent" (include "edgewire.fullname" .) }}
{{- end }}

{{/* host:port the agents dial. */}}
{{- define "edgewire.agent.coordinator" -}}
{{- if .Values.agent.coordinator }}
{{- .Values.agent.coordinator }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "edgewire.coordinator.name" .) .Release.Namespace (int .Values.coordinator.ports.grpc) }}
{{- end }}
{{- end }}

{{- define "edgewire.joinToken.secretName" -}}
{{- default (printf "%s-join-token" (include "edgewire.fullname" .)) .Values.agent.joinToken.secretName }}
{{- end }}

{{- define "edgewire.meshKey.enabled" -}}
{{- if or .Values.meshKey.existingSecret .Values.meshKey.value }}true{{ end }}
{{- end }}

{{- define "edgewire.meshKey.secretName" -}}
{{- default (printf "%s-mesh-key" (include "edgewire.fullname" .)) .Values.meshKey.existingSecret }}
{{- end }}

{{- define "edgewire.adminToken.secretName" -}}
{{- default (printf "%s-admin-token" (include "edgewire.fullname" .)) .Values.coordinator.adminToken.existingSecret }}
{{- end }}

{{- define "edgewire.ticketKey.secretName" -}}
{{- default (printf "%s-relay-ticket-key" (include "edgewire.fullname" .)) .Values.relay.ticketKey.existingSecret }}
{{- end }}

{{/* The pod-level security context of the unprivileged components. */}}
{{- define "edgewire.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "edgewire.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* A PersistentVolumeClaim spec; call with the persistence values. */}}
{{- define "edgewire.pvcSpec" -}}
accessModes:
  {{- toYaml .accessModes | nindent 2 }}
{{- with .storageClassName }}
storageClassName: {{ . | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .size | quote }}
{{- end }}

{{/*
Metrics listeners. Every daemon serves /metrics, /healthz and /readyz on
its --metrics-listen address, "host:port" (host empty: every address).
*/}}

{{/* The port of a listen address ("" when it has none). */}}
{{- define "edgewire.listenPort" -}}
{{- regexFind "[0-9]+$" (toString .) }}
{{- end }}

{{/* The host of a listen address: "" for ":9090", "0.0.0.0" or "[::]". */}}
{{- define "edgewire.listenHost" -}}
{{- $h := regexReplaceAll ":[0-9]*$" (toString .) "" | trimPrefix "[" | trimSuffix "]" }}
{{- if not (has $h (list "0.0.0.0" "::")) }}{{ $h }}{{ end }}
{{- end }}

{{/* "true" when the listen address is loopback only (no pod IP answers). */}}
{{- define "edgewire.listenLoopback" -}}
{{- $h := include "edgewire.listenHost" . }}
{{- if or (hasPrefix "127." $h) (eq $h "::1") (eq $h "localhost") }}true{{ end }}
{{- end }}

{{/* Whether a ServiceMonitor or PodMonitor scrapes the release's pods. */}}
{{- define "edgewire.monitored" -}}
{{- if or .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled }}true{{ end }}
{{- end }}

{{/*
A pod-network component's metrics listener that kubelet and Prometheus can
reach (the pod IP); fails when monitoring is on and they cannot. Call with
(dict "ctx" $ "listen" $c.metricsListen "key" "coordinator.metricsListen"
"default" ":9090"); returns "true" when reachable.
*/}}
{{- define "edgewire.podMetrics" -}}
{{- $reachable := and .listen (not (include "edgewire.listenLoopback" .listen)) (not (include "edgewire.listenHost" .listen)) }}
{{- if and (include "edgewire.monitored" .ctx) (not $reachable) }}
{{- fail (printf "%s %q cannot be scraped from the pod network: set it to %q, or turn monitoring.serviceMonitor and monitoring.podMonitor off" .key (toString .listen) .default) }}
{{- end }}
{{- if $reachable }}true{{ end }}
{{- end }}

{{/*
Scrape settings of a ServiceMonitor endpoint or PodMonitor endpoint; call
with monitoring.serviceMonitor or monitoring.podMonitor. Every series gets
the Kubernetes node (node) and the component (component) as labels, which
the alert rules and dashboard in deploy/monitoring use.
*/}}
{{- define "edgewire.scrapeSettings" -}}
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
relabelings:
  - sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  - sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
    targetLabel: component
{{- end }}
