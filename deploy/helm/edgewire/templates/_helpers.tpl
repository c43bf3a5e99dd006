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
