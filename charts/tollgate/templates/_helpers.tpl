{{/* Names, labels and small computed values shared by every template. */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name. A release called "tollgate" gets plain "tollgate-…" names. */}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else if contains (include "tollgate.name" .) .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tollgate.name" .) | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "tollgate.controller.fullname" -}}
{{- printf "%s-controller" (include "tollgate.fullname" .) }}
{{- end }}

{{- define "tollgate.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "tollgate.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (printf "%s-proxy" (include "tollgate.fullname" .)) .Values.proxy.serviceAccount.name }}
{{- else }}
{{- required "proxy.serviceAccount.name is required when proxy.serviceAccount.create is false" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the controller's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "tollgate.controller.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "tollgate.controller.fullname" .)) .Values.controller.tls.secretName }}
{{- end }}

{{/* Where proxies subscribe: the controller Service's in-cluster DNS name. */}}
{{- define "tollgate.controller.url" -}}
{{- printf "https://%s.%s.svc:%d" (include "tollgate.controller.fullname" .) .Release.Namespace (int .Values.controller.service.port) }}
{{- end }}

{{/*
One fleet's effective settings: the `proxy` defaults overlaid with the fleet's own keys.
Call with (dict "root" $ "fleet" $fleet); returns YAML (use fromYaml).
*/}}
{{- define "tollgate.fleet.settings" -}}
{{- $defaults := omit (deepCopy .root.Values.proxy) "serviceAccount" }}
{{- toYaml (mergeOverwrite $defaults (deepCopy .fleet)) }}
{{- end }}

{{- define "tollgate.fleet.fullname" -}}
{{- printf "%s-proxy-%s" (include "tollgate.fullname" .root) .fleet.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fleet.selectorLabels" -}}
{{ include "tollgate.selectorLabels" .root }}
app.kubernetes.io/component: proxy
tollgate.dev/fleet: {{ .fleet.name }}
{{- end }}

{{/* Container securityContext shared by every Tollgate container. */}}
{{- define "tollgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
