#!/bin/sh
# Mints a JWT for the chat example: ./token.sh alice → a token valid for an hour, signed by
# example-signing-key.pem (an example key, published in this repository: never trust it).
set -eu
user=${1:?usage: token.sh USER}
here=$(dirname "$0")
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"chat-example"}' | b64url)
claims=$(printf '{"iss":"https://chat.example","aud":"chat","sub":"%s","iat":%s,"exp":%s}' "$user" "$now" $((now + 3600)) | b64url)
signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$here/example-signing-key.pem" | b64url)
printf '%s.%s.%s\n' "$header" "$claims" "$signature"
