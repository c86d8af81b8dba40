{
  "targets": [
    {
      "target_name": "lorakit",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/core').filter(f=>f.endsWith('.cc')).map(f=>'native/core/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/cpu').filter(f=>f.endsWith('.cc')&&!/^microkernel_(avx|amx|neon)/.test(f)).map(f=>'native/cpu/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/napi').filter(f=>f.endsWith('.cc')).map(f=>'native/napi/'+f).join(' ')\")"
      ],
      "conditions": [
        ["target_arch=='x64'", {
          "sources": ["<!@(node -p \"require('fs').readdirSync('native/cpu').filter(f=>/^microkernel_(avx|amx).*\\.cc$/.test(f)).map(f=>'native/cpu/'+f).join(' ')\")"]
        }],
        ["target_arch=='arm64'", {
          "sources": ["native/cpu/microkernel_neon.cc"]
        }]
      ],
      "include_dirs": ["native"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS", "LORAKIT_NODE_GYP=1"],
      "cflags_cc": ["-O3", "-std=c++17", "-fvisibility=hidden"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "ldflags": ["-pthread"]
    }
  ]
}
