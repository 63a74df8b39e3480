// Verbatim copy of the "WebSocket Client (Frontend)" code block of the seed,
// shared/seed/websockets-rule.md (everything below this header, unchanged).
// web's browser test compiles it with esbuild and runs it against throng;
// TestSeedCopyIsVerbatim checks it against the seed when the seed is present.
// client/websocket.ts
export class WebSocketClient {
  private ws: WebSocket | null = null;
  private reconnectAttempts = 0;
  private maxReconnectAttempts = 5;
  private reconnectDelay = 1000;

  constructor(
    private url: string,
    private token?: string,
  ) {}

  connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const wsUrl = this.token ? `${this.url}?token=${this.token}` : this.url;

      this.ws = new WebSocket(wsUrl);

      this.ws.onopen = () => {
        console.log("WebSocket connected");
        this.reconnectAttempts = 0;
        resolve();
      };

      this.ws.onmessage = (event) => {
        try {
          const data = JSON.parse(event.data);
          this.handleMessage(data);
        } catch (error) {
          console.error("Failed to parse message:", error);
        }
      };

      this.ws.onclose = (event) => {
        console.log("WebSocket disconnected:", event.code, event.reason);
        this.handleReconnect();
      };

      this.ws.onerror = (error) => {
        console.error("WebSocket error:", error);
        reject(error);
      };
    });
  }

  private handleReconnect() {
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++;
      const delay =
        this.reconnectDelay * Math.pow(2, this.reconnectAttempts - 1);

      console.log(
        `Reconnecting in ${delay}ms (attempt ${this.reconnectAttempts})`,
      );

      setTimeout(() => {
        this.connect().catch(console.error);
      }, delay);
    } else {
      console.error("Max reconnection attempts reached");
    }
  }

  send(data: any) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(data));
    } else {
      console.error("WebSocket is not connected");
    }
  }

  private handleMessage(data: any) {
    switch (data.type) {
      case "message":
        this.onMessage?.(data);
        break;
      case "user-joined":
        this.onUserJoined?.(data);
        break;
      case "user-left":
        this.onUserLeft?.(data);
        break;
      case "error":
        this.onError?.(data);
        break;
    }
  }

  // Event handlers (to be overridden)
  onMessage?: (data: any) => void;
  onUserJoined?: (data: any) => void;
  onUserLeft?: (data: any) => void;
  onError?: (data: any) => void;

  disconnect() {
    if (this.ws) {
      this.ws.close();
      this.ws = null;
    }
  }
}

// Usage
const client = new WebSocketClient("ws://localhost:3000/ws", "your-jwt-token");

client.onMessage = (data) => {
  console.log("Received message:", data);
};

client.onUserJoined = (data) => {
  console.log("User joined:", data.userName);
};

await client.connect();
client.send({ type: "join", roomId: "general", userName: "Alice" });
